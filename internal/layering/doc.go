// Package layering holds no code, only the tests that keep the
// architecture in shape: which packages may start processes, and which
// packages may import which. A rule broken here is a design decision to
// make on purpose (change the rule, with its reason), never by accident.
package layering
