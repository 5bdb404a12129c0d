package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
)

// candidates returns a candidate func that proposes ports in order and
// counts how often it was asked.
func candidates(ports ...int) (func() (int, error), *int) {
	calls := 0
	return func() (int, error) {
		calls++
		if calls > len(ports) {
			return ports[len(ports)-1], nil
		}
		return ports[calls-1], nil
	}, &calls
}

func TestAllocatePort(t *testing.T) {
	ctx := context.Background()
	errNoPort := errors.New("no free port on host")

	tests := []struct {
		name      string
		reserved  []int               // ports another VM holds already
		proposals []int               // what the candidate proposes, in order
		candidate func() (int, error) // overrides proposals
		vmID      string              // "" means the test VM
		guestPort int
		wantPort  int
		wantErr   error
		wantCalls int
	}{
		{
			name:      "first candidate free",
			candidate: func() (int, error) { return 40000, nil },
			guestPort: 22, wantPort: 40000, wantCalls: 1,
		},
		{
			name:      "retries past reserved ports",
			reserved:  []int{40000, 40001},
			guestPort: 4096, wantPort: 40002, wantCalls: 3,
		},
		{
			name:      "gives up when every candidate is reserved",
			reserved:  []int{40000},
			proposals: []int{40000},
			guestPort: 22, wantErr: ErrConflict, wantCalls: portAttempts,
		},
		{
			name:      "candidate error is returned",
			candidate: func() (int, error) { return 0, errNoPort },
			guestPort: 22, wantErr: errNoPort, wantCalls: 1,
		},
		{
			name:      "candidate out of range",
			candidate: func() (int, error) { return 70000, nil },
			guestPort: 22, wantErr: ErrInvalid, wantCalls: 1,
		},
		{
			name:      "bad guest port",
			guestPort: 0, wantErr: ErrInvalid, wantCalls: 0,
		},
		{
			name:      "unknown vm",
			vmID:      "nope",
			guestPort: 22, wantErr: ErrNotFound, wantCalls: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestStore(t)
			img := mustImage(t, s, "debian")
			vm := mustVM(t, s, "dev", img.ID)
			holder := mustVM(t, s, "holder", img.ID)
			for _, p := range tc.reserved {
				if _, err := s.AllocatePort(ctx, holder.ID, 80, func() (int, error) { return p, nil }); err != nil {
					t.Fatal(err)
				}
			}

			proposals := tc.proposals
			if proposals == nil {
				proposals = []int{40000, 40001, 40002}
			}
			propose, calls := candidates(proposals...)
			if tc.candidate != nil {
				inner := tc.candidate
				propose = func() (int, error) { *calls++; return inner() }
			}
			vmID := vm.ID
			if tc.vmID != "" {
				vmID = tc.vmID
			}

			port, err := s.AllocatePort(ctx, vmID, tc.guestPort, propose)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("AllocatePort = %d, %v; want error %v", port, err, tc.wantErr)
			}
			if *calls != tc.wantCalls {
				t.Errorf("candidate called %d times, want %d", *calls, tc.wantCalls)
			}
			got, err := s.PortsForVM(ctx, vm.ID)
			if err != nil {
				t.Fatal(err)
			}
			var want []Port
			if tc.wantErr == nil {
				if port != tc.wantPort {
					t.Errorf("port = %d, want %d", port, tc.wantPort)
				}
				want = []Port{{Port: tc.wantPort, VMID: vm.ID, GuestPort: tc.guestPort, Proto: ProtoTCP}}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("PortsForVM = %+v, want %+v", got, want)
			}
		})
	}
}

func TestReleasePorts(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t)
	img := mustImage(t, s, "debian")
	a := mustVM(t, s, "a", img.ID)
	b := mustVM(t, s, "b", img.ID)
	propose, _ := candidates(41002, 41001, 41003)
	for _, alloc := range []struct {
		vm    string
		guest int
	}{{a.ID, 22}, {a.ID, 4096}, {b.ID, 22}} {
		if _, err := s.AllocatePort(ctx, alloc.vm, alloc.guest, propose); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.PortsForVM(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []Port{
		{Port: 41001, VMID: a.ID, GuestPort: 4096, Proto: ProtoTCP},
		{Port: 41002, VMID: a.ID, GuestPort: 22, Proto: ProtoTCP},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PortsForVM = %+v, want %+v (ordered by port)", got, want)
	}

	if err := s.ReleasePorts(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.PortsForVM(ctx, a.ID); len(got) != 0 {
		t.Errorf("ports left after release: %+v", got)
	}
	if got, _ := s.PortsForVM(ctx, b.ID); len(got) != 1 {
		t.Errorf("release touched another vm: %+v", got)
	}
	// A released port is free for the next VM.
	if p, err := s.AllocatePort(ctx, b.ID, 80, func() (int, error) { return 41001, nil }); err != nil || p != 41001 {
		t.Errorf("reallocate released port = %d, %v", p, err)
	}
}
