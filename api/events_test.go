package api

import "testing"

func TestBusEventSummary(t *testing.T) {
	cases := []struct {
		ev   BusEvent
		want string
	}{
		{BusEvent{Kind: EventVM, VM: "dev", Change: VMChanged, VMInfo: &VM{State: VMStopped, LastError: "qemu exited"}}, "vm dev changed: stopped (qemu exited)"},
		{BusEvent{Kind: EventVM, VM: "dev", Change: VMDeleted, VMInfo: &VM{State: VMRunning}}, "vm dev deleted"},
		{BusEvent{Kind: EventSession, VM: "dev", Session: &Session{Name: "make", State: SessionExited, Exit: &ExitStatus{Code: 2}}}, "session dev/make exited (exit 2)"},
		{BusEvent{Kind: EventOperation, Operation: &Operation{ID: "o1", Kind: "vm.create", Target: "dev"}}, "op o1 vm.create dev: started"},
		{BusEvent{Kind: EventOperation, Operation: &Operation{ID: "o1", Kind: "vm.create", Target: "dev"}, Stage: &Stage{Name: "boot", State: OpFailed, Error: "timeout"}}, "op o1 vm.create dev: stage boot failed: timeout"},
		{BusEvent{Kind: EventOperation, Done: true, Operation: &Operation{ID: "o1", Kind: "vm.create", Target: "dev", State: OpSucceeded}}, "op o1 vm.create dev: succeeded"},
	}
	for _, c := range cases {
		if got := c.ev.Summary(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}

func TestEgressSummaries(t *testing.T) {
	ev := BusEvent{Kind: EventEgress, VM: "v1", Egress: &EgressRecord{Decision: "deny", Proto: "tcp", Name: "evil.example", Port: 443, Process: "curl"}}
	if got, want := ev.Summary(), "egress v1 deny tcp evil.example:443 by curl"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
	for vm, want := range map[*VM]string{
		{Egress: "all"}: "all",
		{Egress: "allow", EgressPolicy: "agents"}: "allow (policy agents)",
		{Egress: "allow", EgressPolicy: "agents", EgressAllow: []string{"a.example"}, EgressDeny: []string{"b"}}: "allow (policy agents + 2 rules)",
	} {
		if got := vm.EgressSummary(); got != want {
			t.Errorf("EgressSummary() = %q, want %q", got, want)
		}
	}
}
