package store

import (
	"context"
	"fmt"
)

// portAttempts bounds AllocatePort's retries. A candidate that is free on
// the host but already reserved here (a stopped VM keeps its ports) costs
// one retry; this many in a row means the candidate source is broken.
const portAttempts = 16

func validPort(p int) bool { return p >= 1 && p <= 65535 }

// AllocatePort reserves a host port forwarding to guestPort of VM vmID and
// returns it. candidate proposes a port that is free on the host right now
// (typically by binding 127.0.0.1:0); the reservation here is what keeps
// two VMs from being handed the same port when one of them is not running
// to hold it. When the proposal is already reserved, candidate is asked
// again, up to a bound, after which the error is ErrConflict. An unknown
// VM is ErrNotFound.
func (s *Store) AllocatePort(ctx context.Context, vmID string, guestPort int, candidate func() (int, error)) (int, error) {
	if !validPort(guestPort) {
		return 0, fmt.Errorf("allocate port for vm %s: guest port %d: %w", vmID, guestPort, ErrInvalid)
	}
	for range portAttempts {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("allocate port for vm %s: %w", vmID, err)
		}
		port, err := candidate()
		if err != nil {
			return 0, fmt.Errorf("allocate port for vm %s: %w", vmID, err)
		}
		if !validPort(port) {
			return 0, fmt.Errorf("allocate port for vm %s: candidate %d: %w", vmID, port, ErrInvalid)
		}
		_, err = s.q.ExecContext(ctx,
			`INSERT INTO ports (port, vm_id, guest_port, proto) VALUES (?, ?, ?, ?)`,
			port, vmID, guestPort, ProtoTCP)
		switch {
		case err == nil:
			return port, nil
		case isUnique(err, "ports.port"):
			continue
		case isForeignKey(err):
			return 0, fmt.Errorf("allocate port: vm %s: %w", vmID, ErrNotFound)
		default:
			return 0, fmt.Errorf("allocate port for vm %s: %w", vmID, err)
		}
	}
	return 0, fmt.Errorf("allocate port for vm %s: %d candidates were all reserved: %w",
		vmID, portAttempts, ErrConflict)
}

// PortsForVM returns the ports reserved for VM vmID, lowest first. An
// unknown VM has none; that is not an error.
func (s *Store) PortsForVM(ctx context.Context, vmID string) ([]Port, error) {
	rows, err := s.q.QueryContext(ctx,
		`SELECT port, vm_id, guest_port, proto FROM ports WHERE vm_id = ? ORDER BY port`, vmID)
	if err != nil {
		return nil, fmt.Errorf("ports for vm %s: %w", vmID, err)
	}
	defer rows.Close()
	var out []Port
	for rows.Next() {
		var p Port
		if err := rows.Scan(&p.Port, &p.VMID, &p.GuestPort, &p.Proto); err != nil {
			return nil, fmt.Errorf("ports for vm %s: %w", vmID, err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ports for vm %s: %w", vmID, err)
	}
	return out, nil
}

// ReleasePorts drops every reservation of VM vmID. DeleteVM does this by
// cascade; this is for a VM that keeps existing but gives up its forwards.
func (s *Store) ReleasePorts(ctx context.Context, vmID string) error {
	if _, err := s.q.ExecContext(ctx, `DELETE FROM ports WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("release ports of vm %s: %w", vmID, err)
	}
	return nil
}
