module example.com/orchestrator

go 1.26.8

require github.com/bangerdev/banger v0.0.0

require golang.org/x/sys v0.50.0 // indirect

// The banger repository this example sits in; a program elsewhere
// requires a released version instead.
replace github.com/bangerdev/banger => ../..
