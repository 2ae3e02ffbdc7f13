package auth

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"
)

// UserUsage is the usage of gnlctl user.
const UserUsage = `usage:
  gnlctl user add NAME --role viewer|operator|admin --file USERS.json   password: first line of stdin
  gnlctl user passwd NAME --file USERS.json                             password: first line of stdin
  gnlctl user role NAME viewer|operator|admin --file USERS.json
  gnlctl user remove NAME --file USERS.json
  gnlctl user list --file USERS.json
--file defaults to $GNLD_HTTP_USERS. add creates the file (mode 0600).
A running gnld picks changes up within seconds.`

// UsageError is a mistake on gnlctl user's command line (gnlctl exits 2).
type UsageError struct{ Msg string }

func (e UsageError) Error() string { return e.Msg + "\n" + UserUsage }

// UserCommand is `gnlctl user ...` (args without "user"): it manages the
// accounts in a users file. Passwords are read from stdin, the first line
// (with echo off when stdin is a terminal, which is asked twice). Flags may
// come before or after the positional arguments. -h prints UserUsage and
// returns flag.ErrHelp.
func UserCommand(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return UsageError{"user: no subcommand"}
	}
	sub := args[0]
	npos := map[string]int{"add": 1, "passwd": 1, "role": 2, "remove": 1, "list": 0}
	want, ok := npos[sub]
	if !ok {
		if sub == "-h" || sub == "--help" || sub == "help" {
			fmt.Fprintln(stdout, UserUsage)
			return flag.ErrHelp
		}
		return UsageError{fmt.Sprintf("user: unknown subcommand %q", sub)}
	}
	fl := flag.NewFlagSet("gnlctl user "+sub, flag.ContinueOnError)
	fl.SetOutput(io.Discard) // errors come back, with UserUsage
	fl.Usage = func() {}
	file := fl.String("file", os.Getenv("GNLD_HTTP_USERS"), "the users file")
	role := new(string)
	if sub == "add" {
		role = fl.String("role", "", "viewer, operator or admin")
	}
	pos, err := parseFlags(fl, args[1:])
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintln(stdout, UserUsage)
		return err
	case err != nil:
		return UsageError{fmt.Sprintf("user %s: %v", sub, err)}
	case len(pos) != want:
		return UsageError{fmt.Sprintf("user %s: want %d argument(s), got %d: %q", sub, want, len(pos), pos)}
	case *file == "":
		return UsageError{fmt.Sprintf("user %s: no --file (and GNLD_HTTP_USERS is not set)", sub)}
	case sub == "add" && *role == "":
		return UsageError{"user add: no --role"}
	}

	u, err := LoadUsers(*file)
	created := false
	if sub == "add" && errors.Is(err, fs.ErrNotExist) {
		u, err, created = NewUsers(*file), nil, true
	}
	if err != nil {
		return err
	}
	var done string
	switch sub {
	case "list":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE")
		for _, x := range u.List() {
			fmt.Fprintf(tw, "%s\t%s\n", x.Name, x.Role)
		}
		return tw.Flush()
	case "add":
		r, err := ParseRole(*role)
		if err != nil {
			return UsageError{"user add: " + err.Error()}
		}
		if err := checkName(pos[0]); err != nil {
			return err
		}
		if _, ok := u.Lookup(pos[0]); ok {
			return fmt.Errorf("%w: %q in %s: use gnlctl user passwd or role", ErrUserExists, pos[0], *file)
		}
		pw, err := readPassword(stdin, stdout, pos[0])
		if err != nil {
			return err
		}
		if err := u.Add(pos[0], r, pw); err != nil {
			return err
		}
		done = fmt.Sprintf("added %s (%s) to %s", pos[0], r, *file)
	case "passwd":
		if _, ok := u.Lookup(pos[0]); !ok {
			return fmt.Errorf("%w %q in %s", ErrNoUser, pos[0], *file)
		}
		pw, err := readPassword(stdin, stdout, pos[0])
		if err != nil {
			return err
		}
		if err := u.SetPassword(pos[0], pw); err != nil {
			return err
		}
		done = fmt.Sprintf("changed the password of %s in %s; their sessions end", pos[0], *file)
	case "role":
		r, err := ParseRole(pos[1])
		if err != nil {
			return UsageError{"user role: " + err.Error()}
		}
		if err := u.SetRole(pos[0], r); err != nil {
			return err
		}
		done = fmt.Sprintf("%s is now %s in %s; their sessions end", pos[0], r, *file)
	case "remove":
		if err := u.Remove(pos[0]); err != nil {
			return err
		}
		done = fmt.Sprintf("removed %s from %s; their sessions end", pos[0], *file)
	}
	if err := u.Save(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, done)
	if sub == "add" && !hasAdmin(u.List()) {
		fmt.Fprintln(stdout, "note: there is no admin yet, so nobody can manage accounts on the page: add one with --role admin")
	}
	if created {
		fmt.Fprintf(stdout, "created %s (mode 0600); gnld reads it as its own user (as packaged: chown gnld: %s), and writes it from the account page, so keep it in a folder gnld may write (/var/lib/gnld)\n", *file, *file)
	}
	return nil
}

func hasAdmin(users []User) bool {
	for _, x := range users {
		if x.Role == Admin {
			return true
		}
	}
	return false
}

// parseFlags parses flags before, between or after the positional
// arguments, returning the positionals.
func parseFlags(fl *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			return nil, err
		}
		if fl.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
}

// readPassword reads a password from the first line of stdin, saying so on
// stdout. On a terminal, echo is off and the password is asked twice.
func readPassword(stdin io.Reader, stdout io.Writer, name string) (string, error) {
	fmt.Fprintf(stdout, "Password for %s (at least %d characters), read from the first line of standard input: ", name, MinPassword)
	in := bufio.NewReader(stdin)
	restore, tty := noEcho(stdin)
	defer restore()
	pw, err := readLine(in)
	if tty {
		fmt.Fprintln(stdout)
	}
	if err != nil {
		return "", err
	}
	if err := checkPassword(pw); err != nil {
		return "", err
	}
	if tty {
		fmt.Fprint(stdout, "Again: ")
		again, err := readLine(in)
		fmt.Fprintln(stdout)
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", errors.New("the two passwords differ")
		}
	}
	return pw, nil
}

func readLine(in *bufio.Reader) (string, error) {
	line, err := in.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		if errors.Is(err, io.EOF) {
			return "", errors.New("no password on standard input")
		}
		return "", fmt.Errorf("reading the password: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// noEcho turns the terminal's echo off when stdin is one, and returns how
// to turn it back on.
func noEcho(stdin io.Reader) (restore func(), tty bool) {
	f, ok := stdin.(*os.File)
	if !ok {
		return func() {}, false
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}, false // not a terminal
	}
	t := *old
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return func() {}, true
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, true
}
