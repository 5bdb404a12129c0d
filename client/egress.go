package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/bangerdev/banger/api"
)

// EgressShow is the egress policy a VM's connections are judged by.
func (c *Client) EgressShow(ctx context.Context, name string) (api.EgressView, error) {
	var v api.EgressView
	return v, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/egress", nil, nil, &v)
}

// EgressChange adds and removes a VM's own egress patterns; its next
// connection is judged by the new policy.
func (c *Client) EgressChange(ctx context.Context, name string, ch api.EgressChange) (api.EgressView, error) {
	var v api.EgressView
	return v, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(name)+"/egress", nil, ch, &v)
}

// EgressLog reads a VM's kept connection log, oldest first.
func (c *Client) EgressLog(ctx context.Context, name string, q api.EgressLogQuery) ([]api.EgressRecord, error) {
	v := url.Values{}
	if q.Denied {
		v.Set("denied", "1")
	}
	if q.After > 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var recs []api.EgressRecord
	return recs, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/egress/log", v, nil, &recs)
}

// EgressLearn is the smallest allowlist that would have let a VM's
// logged connections through.
func (c *Client) EgressLearn(ctx context.Context, name string) (api.EgressLearned, error) {
	var l api.EgressLearned
	return l, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(name)+"/egress/learn", nil, nil, &l)
}

// FollowEgress calls fn with a VM's kept log records that q selects,
// then with every new one as the daemon publishes it (GET /v1/events),
// until ctx ends. Records are passed once each, in ID order: the first
// live event fetches what was logged between the read and the watch.
func (c *Client) FollowEgress(ctx context.Context, name string, q api.EgressLogQuery, fn func(api.EgressRecord)) error {
	recs, err := c.EgressLog(ctx, name, q)
	if err != nil {
		return err
	}
	last := q.After
	emit := func(r api.EgressRecord) {
		if r.ID <= last || (q.Denied && !r.Denied()) {
			return
		}
		last = r.ID
		fn(r)
	}
	for _, r := range recs {
		emit(r)
	}
	caughtUp := false
	var gapErr error
	err = c.WatchEvents(ctx, name, func(ev api.BusEvent) {
		if ev.Kind != api.EventEgress || ev.Egress == nil {
			return
		}
		if !caughtUp {
			caughtUp = true
			gap, err := c.EgressLog(ctx, name, api.EgressLogQuery{Denied: q.Denied, After: last, Limit: api.MaxEgressLogLimit})
			if err != nil {
				gapErr = err
			}
			for _, r := range gap {
				if r.ID < ev.Egress.ID {
					emit(r)
				}
			}
		}
		emit(*ev.Egress)
	})
	if err != nil {
		return err
	}
	return gapErr
}
