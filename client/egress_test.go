package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/bangerdev/banger/api"
)

// TestFollowEgress: the kept log, then the records logged between the
// read and the watch, then live ones; each once, in order.
func TestFollowEgress(t *testing.T) {
	log := []api.EgressRecord{{ID: 1, Decision: "allow"}, {ID: 2, Decision: "deny"}}
	m := http.NewServeMux()
	m.HandleFunc("GET /v1/vms/v/egress/log", func(w http.ResponseWriter, r *http.Request) {
		var out []api.EgressRecord
		for _, rec := range log {
			if after := r.URL.Query().Get("after"); after == "" || rec.ID > int64(after[0]-'0') {
				out = append(out, rec)
			}
		}
		_ = json.NewEncoder(w).Encode(out)
		// Logged after the first read, before the watch.
		log = append(log, api.EgressRecord{ID: 3, Decision: "allow"})
	})
	m.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		_ = enc.Encode(api.BusEvent{Kind: api.EventVM, VM: "v"})
		_ = enc.Encode(api.BusEvent{Kind: api.EventEgress, VM: "v", Egress: &api.EgressRecord{ID: 4, Decision: "deny"}})
		_ = enc.Encode(api.BusEvent{Kind: api.EventEgress, VM: "v", Egress: &api.EgressRecord{ID: 4, Decision: "deny"}})
		_ = enc.Encode(api.BusEvent{Kind: api.EventEgress, VM: "v", Egress: &api.EgressRecord{ID: 5, Decision: "allow"}})
	})
	srv := httptest.NewServer(m)
	defer srv.Close()
	var got []int64
	err := tcpClient(srv).FollowEgress(context.Background(), "v", api.EgressLogQuery{}, func(r api.EgressRecord) { got = append(got, r.ID) })
	if err != nil || !slices.Equal(got, []int64{1, 2, 3, 4, 5}) {
		t.Fatalf("followed %v, %v", got, err)
	}
}
