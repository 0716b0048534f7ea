//go:build race

package e2e

// raceEnabled makes the suite build the server with -race when it races.
const raceEnabled = true
