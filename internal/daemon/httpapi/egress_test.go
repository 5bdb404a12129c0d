package httpapi

import (
	"context"
	"testing"
	"time"

	"github.com/bangerdev/banger/api"
)

type fakeEgress struct {
	Egress
	change api.EgressChange
	query  api.EgressLogQuery
}

func (f *fakeEgress) EgressShow(ctx context.Context, vm string) (api.EgressView, error) {
	if vm != "dev" {
		return api.EgressView{}, api.Errorf(api.CodeNotFound, "", "no VM %q", vm)
	}
	return api.EgressView{VM: "dev", Mode: "allow", Policy: "agents", Allow: []string{"a.example"}}, nil
}

func (f *fakeEgress) EgressChange(ctx context.Context, vm string, ch api.EgressChange) (api.EgressView, error) {
	f.change = ch
	return api.EgressView{VM: vm, Mode: "allow", Policy: "agents", Allow: ch.Allow}, nil
}

func (f *fakeEgress) EgressLog(ctx context.Context, vm string, q api.EgressLogQuery) ([]api.EgressRecord, error) {
	f.query = q
	if q.After > 0 {
		return nil, nil
	}
	return []api.EgressRecord{{ID: 3, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), VMID: "id1", VM: vm, Proto: "tcp", Name: "x.example", Port: 443, Decision: "deny"}}, nil
}

func (f *fakeEgress) EgressLearn(ctx context.Context, vm string) (api.EgressLearned, error) {
	return api.EgressLearned{VM: vm, Allow: []string{"x.example"}}, nil
}

func TestEgressRoutes(t *testing.T) {
	eg := &fakeEgress{}
	h := New(Backend{Egress: eg})
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"GET", "/v1/vms/dev/egress", "", 200, `{"vm":"dev","mode":"allow","policy":"agents","allow":["a.example"]}` + "\n"},
		{"GET", "/v1/vms/nope/egress", "", 404, `{"error":{"message":"no VM \"nope\"","code":"not_found"}}` + "\n"},
		{"POST", "/v1/vms/dev/egress", `{"allow":["b.example"],"remove":["a.example"]}`, 200, `{"vm":"dev","mode":"allow","policy":"agents","allow":["b.example"]}` + "\n"},
		{"POST", "/v1/vms/dev/egress", `{"alow":["b.example"]}`, 400, `{"error":{"message":"malformed request body: json: unknown field \"alow\"","hint":"send a valid JSON object","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/egress/log?denied=1&limit=5", "", 200, `[{"id":3,"time":"2026-01-02T03:04:05Z","vm_id":"id1","vm":"dev","proto":"tcp","name":"x.example","port":443,"decision":"deny","bytes_up":0,"bytes_down":0,"duration_ms":0}]` + "\n"},
		{"GET", "/v1/vms/dev/egress/log?after=9", "", 200, "[]\n"},
		{"GET", "/v1/vms/dev/egress/log?limit=0", "", 400, `{"error":{"message":"invalid limit \"0\"","hint":"pass a number of records from 1 to 10000","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/egress/log?after=-1", "", 400, `{"error":{"message":"invalid after \"-1\"","hint":"pass the id of a log record","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/egress/log?denied=maybe", "", 400, `{"error":{"message":"invalid denied \"maybe\"","hint":"pass denied=1 or leave it out","code":"invalid"}}` + "\n"},
		{"GET", "/v1/vms/dev/egress/learn", "", 200, `{"vm":"dev","allow":["x.example"]}` + "\n"},
	}
	for _, c := range cases {
		rec := do(t, h, c.method, c.path, c.body)
		if rec.Code != c.status || rec.Body.String() != c.want {
			t.Errorf("%s %s: got %d %q\nwant %d %q", c.method, c.path, rec.Code, rec.Body, c.status, c.want)
		}
	}
	if len(eg.change.Remove) != 1 || eg.change.Allow[0] != "b.example" {
		t.Errorf("change reached the engine as %+v", eg.change)
	}
	if eg.query.After != 9 {
		t.Errorf("last query %+v", eg.query)
	}
}
