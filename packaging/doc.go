// Package packaging is gnld's Debian package: its maintainer scripts and
// control template (debian/), built by tools/mkdeb (make deb). It holds no
// Go code; its test builds the package and installs it with real dpkg.
package packaging
