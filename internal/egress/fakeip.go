package egress

import (
	"container/list"
	"net/netip"
	"sync"
)

// FakeRange is where fake addresses come from: 198.18.0.0/15 is reserved
// for benchmarking (RFC 2544), so no real host the guest could mean has
// one, and a connection to it can only be a name the gateway answered.
var FakeRange = netip.MustParsePrefix("198.18.0.0/15")

// DefaultFakeIPs is the default bound of a VM's table.
const DefaultFakeIPs = 65536

// fakeSpan is the number of usable offsets in FakeRange (the first and
// last addresses are left out).
const fakeSpan = 1<<17 - 2

// FakeIPs maps the names a VM looked up to fake addresses and back. A
// name keeps its address while it stays in the table; the table holds
// at most its bound, dropping the least recently used name. Addresses
// are handed out round the whole range before one is reused, so a guest
// that cached an evicted answer (TTL 60 s) almost never reaches another
// name through it. Safe for concurrent use.
type FakeIPs struct {
	mu     sync.Mutex
	max    int
	next   uint32 // next offset to try, 0..fakeSpan-1
	lru    *list.List
	byName map[string]*list.Element
	byAddr map[netip.Addr]*list.Element
}

type fakeEntry struct {
	name string
	addr netip.Addr
}

// NewFakeIPs returns a table bounded to max names (DefaultFakeIPs when
// max is not in 1..65536).
func NewFakeIPs(max int) *FakeIPs {
	if max <= 0 || max > DefaultFakeIPs {
		max = DefaultFakeIPs
	}
	return &FakeIPs{max: max, lru: list.New(), byName: map[string]*list.Element{}, byAddr: map[netip.Addr]*list.Element{}}
}

// Addr returns name's fake address, mapping it first if needed. name
// must already be normalized (NormalizeName).
func (f *FakeIPs) Addr(name string) netip.Addr {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.byName[name]; ok {
		f.lru.MoveToFront(e)
		return e.Value.(*fakeEntry).addr
	}
	for f.lru.Len() >= f.max {
		old := f.lru.Back()
		ent := old.Value.(*fakeEntry)
		f.lru.Remove(old)
		delete(f.byName, ent.name)
		delete(f.byAddr, ent.addr)
	}
	// max is below the span, so a free offset is always found.
	var a netip.Addr
	for {
		a = fakeAddr(f.next)
		f.next = (f.next + 1) % fakeSpan
		if _, used := f.byAddr[a]; !used {
			break
		}
	}
	e := f.lru.PushFront(&fakeEntry{name: name, addr: a})
	f.byName[name] = e
	f.byAddr[a] = e
	return a
}

// Name returns the name a fake address stands for.
func (f *FakeIPs) Name(addr netip.Addr) (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.byAddr[addr.Unmap()]
	if !ok {
		return "", false
	}
	f.lru.MoveToFront(e)
	return e.Value.(*fakeEntry).name, true
}

// Len is the number of names mapped.
func (f *FakeIPs) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lru.Len()
}

func fakeAddr(off uint32) netip.Addr {
	v := (uint32(198)<<24 | uint32(18)<<16) + off + 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
