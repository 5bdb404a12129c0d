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
