package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
)

// ErrExhausted says a pool (addresses of the tap subnet) has nothing left.
var ErrExhausted = errors.New("exhausted")

// Lease is a tap-mode VM's place on banger's bridge: its guest address
// (with the subnet's prefix length), its TAP device and its NIC's MAC.
// It lives as long as the VM, so a restarted or re-adopted VM keeps its
// address.
type Lease struct {
	VMID string       `json:"vm_id"`
	Addr netip.Prefix `json:"addr"`
	Tap  string       `json:"tap"`
	MAC  string       `json:"mac"`
}

// leaseAttempts bounds retries when another writer takes the address we
// picked between the read and the insert.
const leaseAttempts = 8

// AllocateLease gives VM vmID the lowest free address of subnet (the
// first host address is the bridge's, so guests start at the second) and
// records tap and mac with it. A full subnet is ErrExhausted, a TAP name
// already leased is ErrExists, an unknown VM ErrNotFound.
func (s *Store) AllocateLease(ctx context.Context, vmID string, subnet netip.Prefix, tap, mac string) (Lease, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return Lease{}, fmt.Errorf("allocate lease for vm %s: subnet %s: %w", vmID, subnet, ErrInvalid)
	}
	for range leaseAttempts {
		used, err := s.usedAddrs(ctx)
		if err != nil {
			return Lease{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
		}
		addr, ok := FirstFreeAddr(subnet, used)
		if !ok {
			return Lease{}, fmt.Errorf("allocate lease for vm %s: no free address in %s: %w", vmID, subnet, ErrExhausted)
		}
		l := Lease{VMID: vmID, Addr: netip.PrefixFrom(addr, subnet.Bits()), Tap: tap, MAC: mac}
		_, err = s.q.ExecContext(ctx,
			`INSERT INTO leases (vm_id, addr, tap, mac, created_at) VALUES (?, ?, ?, ?, ?)`,
			vmID, l.Addr.String(), tap, mac, formatTime(now()))
		switch {
		case err == nil:
			return l, nil
		case isUnique(err, "leases.addr"):
			continue
		case isUnique(err, "leases.tap"):
			return Lease{}, fmt.Errorf("allocate lease for vm %s: tap %s: %w", vmID, tap, ErrExists)
		case isUnique(err, "leases.vm_id"):
			return Lease{}, fmt.Errorf("allocate lease for vm %s: vm has one: %w", vmID, ErrExists)
		case isForeignKey(err):
			return Lease{}, fmt.Errorf("allocate lease: vm %s: %w", vmID, ErrNotFound)
		default:
			return Lease{}, fmt.Errorf("allocate lease for vm %s: %w", vmID, err)
		}
	}
	return Lease{}, fmt.Errorf("allocate lease for vm %s: lost %d races for an address: %w", vmID, leaseAttempts, ErrConflict)
}

// FirstFreeAddr returns the lowest host address of subnet that is neither
// the network address, the gateway (first host), the broadcast address,
// nor in used.
func FirstFreeAddr(subnet netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	subnet = subnet.Masked()
	gw := subnet.Addr().Next()
	for a := gw.Next(); a.IsValid() && subnet.Contains(a); a = a.Next() {
		if !subnet.Contains(a.Next()) {
			// a is the broadcast address.
			break
		}
		if !used[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (s *Store) usedAddrs(ctx context.Context) (map[netip.Addr]bool, error) {
	leases, err := s.ListLeases(ctx)
	if err != nil {
		return nil, err
	}
	used := make(map[netip.Addr]bool, len(leases))
	for _, l := range leases {
		used[l.Addr.Addr()] = true
	}
	return used, nil
}

// LeaseForVM returns VM vmID's lease, or ErrNotFound when it has none
// (a user-mode VM).
func (s *Store) LeaseForVM(ctx context.Context, vmID string) (Lease, error) {
	var l Lease
	var addr string
	err := s.q.QueryRowContext(ctx, `SELECT vm_id, addr, tap, mac FROM leases WHERE vm_id = ?`, vmID).
		Scan(&l.VMID, &addr, &l.Tap, &l.MAC)
	if errors.Is(err, sql.ErrNoRows) {
		return Lease{}, fmt.Errorf("lease of vm %s: %w", vmID, ErrNotFound)
	}
	if err != nil {
		return Lease{}, fmt.Errorf("lease of vm %s: %w", vmID, err)
	}
	if l.Addr, err = netip.ParsePrefix(addr); err != nil {
		return Lease{}, fmt.Errorf("lease of vm %s: bad address %q: %w", vmID, addr, err)
	}
	return l, nil
}

// ListLeases returns every lease, ordered by TAP name.
func (s *Store) ListLeases(ctx context.Context) ([]Lease, error) {
	rows, err := s.q.QueryContext(ctx, `SELECT vm_id, addr, tap, mac FROM leases ORDER BY tap`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	var out []Lease
	for rows.Next() {
		var l Lease
		var addr string
		if err := rows.Scan(&l.VMID, &addr, &l.Tap, &l.MAC); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		var err error
		if l.Addr, err = netip.ParsePrefix(addr); err != nil {
			return nil, fmt.Errorf("list leases: bad address %q: %w", addr, err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// ReleaseLease drops VM vmID's lease; releasing a lease that does not
// exist is not an error (cleanup paths call it unconditionally).
func (s *Store) ReleaseLease(ctx context.Context, vmID string) error {
	if _, err := s.q.ExecContext(ctx, `DELETE FROM leases WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("release lease of vm %s: %w", vmID, err)
	}
	return nil
}
