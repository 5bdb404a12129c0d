// Package buildinfo carries the version stamped in at link time
// (-ldflags "-X .../buildinfo.Version=..."), shared by banger and
// banger-agent so the daemon can tell whether a guest runs its agent.
package buildinfo

// Version and Commit are set by the Makefile.
var (
	Version = "dev"
	Commit  = ""
)
