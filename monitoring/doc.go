// Package monitoring holds what a fleet's Prometheus and Grafana need to
// watch gnld devices (docs/FLEET.md, "Alerts and the dashboard"):
//
//   - gnld.rules.yml: the alerting rules, a group per concern
//     (availability, delivery, model), each alert with a severity, a
//     summary and description that name the device and camera and say what
//     to check, and a runbook link into docs/;
//   - rules_test.yml: their unit tests for `promtool test rules`, with the
//     cases that must fire and those that must not;
//   - grafana-dashboard.json: the dashboard (Grafana JSON model), on a
//     data source variable DS_PROMETHEUS, with variables for the device
//     (instance) and the camera.
//
// It holds no Go code but its tests, which run in make test (go test
// ./...): promtool check rules and promtool test rules; the dashboard's
// well-formedness and every PromQL expression in it through promtool check
// rules (as recording rules, with Grafana's variables replaced); every gnld
// metric named in the rules and the dashboard exported by gnld; and, unless
// -short, a live test in which Debian's Prometheus scrapes two gnld
// processes with the rules loaded (every range shortened to 4s and every
// `for:` to 2s), GnldNoResults fires for the camera that stopped, and
// only for it, and GnldPartsNotInspected for a trigger-mode camera sent
// more triggers than its queue holds. The tests need promtool and prometheus: run them with make
// test-go, which runs inside tools/sidroot.
package monitoring
