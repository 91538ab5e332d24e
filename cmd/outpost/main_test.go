package main

import (
	"os"
	"testing"
)

// TestMain lets tests run this test binary as the real outpost command
// (OUTPOST_TEST_MAIN=1), to test signals and exit codes on a real process.
func TestMain(m *testing.M) {
	if os.Getenv("OUTPOST_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
