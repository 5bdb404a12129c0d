package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bangerdev/banger/internal/egress"
)

// handler serves the requests of one brokered guest connection.
type handler struct {
	b         *Broker
	vm        egress.VMRef
	host      *Host
	authority string
	tr        http.RoundTripper
	proxy     *httputil.ReverseProxy
	rec       *egress.Record
}

// errLeak marks a placeholder where it does not belong.
type errLeak struct{ note string }

func (e *errLeak) Error() string { return e.note }

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h.swapRequest(r); err != nil {
		var leak *errLeak
		if errors.As(err, &leak) {
			h.blockLeak(w, leak.note)
			return
		}
		// The error names host paths: the daemon log gets it, the guest not.
		h.b.log.Warn("broker: credential unavailable", "vm", h.vm.Name, "host", h.host.Name, "err", err)
		http.Error(w, "banger egress: a brokered credential is unavailable on the host; see the banger daemon log", http.StatusBadGateway)
		return
	}
	if r.Method == http.MethodPost && h.host.isTokenPath(r.URL.Path) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxTokenBody+1))
		if err != nil {
			http.Error(w, "banger egress: read token request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(body) > maxTokenBody {
			http.Error(w, "banger egress: token request too large", http.StatusRequestEntityTooLarge)
			return
		}
		if strings.Contains(string(body), Marker) {
			h.serveRefresh(w, r, body)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	h.proxy.ServeHTTP(w, r)
}

// blockLeak answers 403, closes the connection and marks the record.
func (h *handler) blockLeak(w http.ResponseWriter, note string) {
	h.rec.Decision = egress.DecisionLeak
	if h.rec.Note == "" {
		h.rec.Note = note
	}
	h.b.log.Warn("broker: credential placeholder leak blocked", "vm", h.vm.Name, "host", h.host.Name, "note", note)
	w.Header().Set("Connection", "close")
	http.Error(w, "banger egress: blocked: "+note, http.StatusForbidden)
}

// swapRequest replaces placeholders in the allowed headers by the real
// values and fails with errLeak for a placeholder anywhere else in the
// request head.
func (h *handler) swapRequest(r *http.Request) error {
	if o, ok := h.b.findPlaceholder(r.RequestURI); ok {
		return h.leakf(o, "the URL")
	}
	if o, ok := h.b.findPlaceholder(r.Host); ok {
		return h.leakf(o, "the Host header")
	}
	for name, vals := range r.Header {
		for i, v := range vals {
			o, ok := h.b.findPlaceholder(v)
			if !ok {
				continue
			}
			if !h.host.swaps(name) {
				return h.leakf(o, "header "+name)
			}
			nv, err := h.swapValue(name, v)
			if err != nil {
				return err
			}
			vals[i] = nv
		}
	}
	return nil
}

func (h *handler) leakf(o owned, where string) error {
	return &errLeak{note: fmt.Sprintf("credential placeholder of %s in %s of a request to %s", o.sec.Cred, where, h.host.Name)}
}

// swapValue replaces every placeholder in one allowed header value; each
// must be this VM's, of this host's service, and an API credential.
func (h *handler) swapValue(name, v string) (string, error) {
	for {
		o, ok := h.b.findPlaceholder(v)
		if !ok {
			return v, nil
		}
		switch {
		case o.vmID != h.vm.ID:
			return "", &errLeak{note: fmt.Sprintf("another VM's credential placeholder in header %s of a request to %s", name, h.host.Name)}
		case o.sec.Service != h.host.Service || o.sec.Role == RoleRefresh:
			return "", h.leakf(o, "header "+name)
		}
		real, err := h.b.realValue(o.sec)
		if err != nil {
			return "", err
		}
		if !strings.Contains(v, o.sec.Placeholder) {
			// The marker without the prefix the placeholder was issued
			// with: not ours to complete.
			return "", h.leakf(o, "header "+name+" (altered)")
		}
		v = strings.ReplaceAll(v, o.sec.Placeholder, real)
	}
}

// serveRefresh handles a token endpoint request whose body carries a
// placeholder: a refresh of this VM's credential is done by the broker;
// anything else is a leak.
func (h *handler) serveRefresh(w http.ResponseWriter, r *http.Request, body []byte) {
	treq, err := parseTokenRequest(r.Header.Get("Content-Type"), body)
	if err != nil {
		h.blockLeak(w, "credential placeholder in an unparsable token request to "+h.host.Name)
		return
	}
	o, ok := h.b.findPlaceholder(treq.get("refresh_token"))
	switch {
	case treq.get("grant_type") != "refresh_token" || !ok:
		o2, _ := h.b.findPlaceholder(string(body))
		h.blockLeak(w, fmt.Sprintf("credential placeholder of %s in a token request to %s that is not its refresh", o2.sec.Cred, h.host.Name))
		return
	case o.vmID != h.vm.ID:
		h.blockLeak(w, "another VM's refresh placeholder sent to "+h.host.Name)
		return
	case o.sec.Role != RoleRefresh || o.sec.Service != h.host.Service || treq.get("refresh_token") != o.sec.Placeholder:
		h.blockLeak(w, fmt.Sprintf("credential placeholder of %s in a token request to %s", o.sec.Cred, h.host.Name))
		return
	}
	// Every other placeholder in the body is a leak.
	if n := strings.Count(string(body), Marker); n != 1 {
		h.blockLeak(w, fmt.Sprintf("extra credential placeholders in a refresh of %s", o.sec.Cred))
		return
	}
	res, err := h.b.refresh(r.Context(), h.vm, h.host, h.authority, h.tr, r, treq, o.sec)
	if err != nil {
		h.b.log.Warn("broker: refresh failed", "vm", h.vm.Name, "credential", o.sec.Cred, "err", err)
		http.Error(w, "banger egress: refresh of "+o.sec.Cred+" failed on the host; see the banger daemon log", http.StatusBadGateway)
		return
	}
	for k, v := range res.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(res.body)))
	w.WriteHeader(res.status)
	_, _ = w.Write(res.body)
}

// refreshResult is what one guest is answered.
type refreshResult struct {
	status int
	header http.Header
	body   []byte
}

// upstreamToken is the outcome of one upstream refresh, shared by every
// VM that waited on it; it holds real tokens and is never logged.
type upstreamToken struct {
	status          int
	header          http.Header
	doc             map[string]any // parsed JSON body on success
	raw             []byte         // body otherwise
	access, refresh string
}

// refresh refreshes sec's credential for vm: from the host file when it
// changed since vm last got it, else upstream (once for all VMs asking
// at the same time), then answers with vm's placeholders.
func (b *Broker) refresh(ctx context.Context, vm egress.VMRef, host *Host, authority string, tr http.RoundTripper, r *http.Request, treq *tokenRequest, sec Secret) (*refreshResult, error) {
	ck := credKey(sec)
	seenKey := vm.ID + "|" + ck
	access := b.vmSibling(vm.ID, sec.Cred, RoleAccess)

	cur, err := b.readCred(sec)
	if err != nil {
		return nil, err
	}
	b.mu.RLock()
	seen, known := b.seen[seenKey]
	tmpl := b.lastResp[ck]
	last, interval := b.lastUpstream[ck], b.minRefreshInterval
	b.mu.RUnlock()
	curHash := sha256.Sum256([]byte(cur.refresh))
	recent := !last.IsZero() && b.opts.Now().Sub(last) < interval
	if (recent || known && seen != curHash) && cur.expiry.After(b.opts.Now().Add(reuseMargin)) && cur.access != "" {
		// Refreshed since this VM last got the token (by another VM or by
		// the host's own agent), or refreshed upstream a moment ago: hand
		// the current one over instead of refreshing again.
		doc := map[string]any{}
		for k, v := range tmpl {
			doc[k] = v
		}
		doc["access_token"] = access
		doc["refresh_token"] = sec.Placeholder
		doc["expires_in"] = int64(cur.expiry.Sub(b.opts.Now()) / time.Second)
		if _, ok := doc["token_type"]; !ok {
			doc["token_type"] = "Bearer"
		}
		body, err := json.Marshal(doc)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		b.seen[seenKey] = curHash
		b.mu.Unlock()
		return &refreshResult{status: http.StatusOK, header: http.Header{"Content-Type": {"application/json"}}, body: body}, nil
	}

	v, err := b.refreshes.Do(ck, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
		defer cancel()
		return b.refreshUpstream(rctx, host, authority, tr, r, treq, sec, curHash)
	})
	if err != nil {
		return nil, err
	}
	up := v.(*upstreamToken)
	res := &refreshResult{status: up.status, header: http.Header{}}
	if ct := up.header.Get("Content-Type"); ct != "" {
		res.header.Set("Content-Type", ct)
	}
	if up.doc == nil {
		// A failed refresh (invalid_grant, ...) goes back as is, with the
		// real refresh token scrubbed should the upstream echo it.
		res.body = []byte(strings.ReplaceAll(string(up.raw), cur.refresh, sec.Placeholder))
		return res, nil
	}
	doc := map[string]any{}
	for k, v := range up.doc {
		doc[k] = v
	}
	if _, ok := doc["access_token"]; ok {
		doc["access_token"] = access
	}
	if _, ok := doc["refresh_token"]; ok {
		doc["refresh_token"] = sec.Placeholder
	}
	if v, ok := doc["id_token"]; ok {
		// A signed id_token is a credential: auth.openai.com exchanges it
		// for an API key. The guest keeps the claims (clients read the
		// account id from them), never the signature.
		if s, _ := v.(string); strings.Count(s, ".") == 2 {
			doc["id_token"] = s[:strings.LastIndexByte(s, '.')+1]
		} else {
			delete(doc, "id_token")
		}
	}
	if res.body, err = json.Marshal(doc); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.seen[seenKey] = sha256.Sum256([]byte(up.refresh))
	b.lastUpstream[ck] = b.opts.Now()
	b.mu.Unlock()
	return res, nil
}

func (b *Broker) vmSibling(vmID, cred, role string) string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if s := b.vms[vmID]; s != nil {
		if e := s.sibling(cred, role); e != nil {
			return e.Placeholder
		}
	}
	return ""
}

// hostCred is an OAuth credential's current state in the host file.
type hostCred struct {
	access, refresh string
	expiry          time.Time
}

func (b *Broker) readCred(sec Secret) (hostCred, error) {
	doc, err := readHostJSON(sec.File)
	if err != nil {
		return hostCred{}, err
	}
	var c hostCred
	parent := sec.Path[:len(sec.Path)-1]
	accessPath := append(append([]string(nil), parent...), accessField(sec))
	if v, ok := lookupPath(doc, sec.Path); ok {
		c.refresh, _ = v.(string)
	}
	if v, ok := lookupPath(doc, accessPath); ok {
		c.access, _ = v.(string)
	}
	if c.refresh == "" {
		return hostCred{}, fmt.Errorf("%s has no %s", sec.File, strings.Join(sec.Path, "."))
	}
	if v, ok := lookupPath(doc, sec.ExpiryPath); ok {
		if n, ok := v.(json.Number); ok {
			if ms, err := n.Int64(); err == nil {
				c.expiry = time.UnixMilli(ms)
			}
		}
	}
	return c, nil
}

// accessField is the access token's field next to the refresh token.
func accessField(sec Secret) string {
	if sec.Path[len(sec.Path)-1] == "refreshToken" {
		return "accessToken"
	}
	return "access"
}

// refreshUpstream sends the refresh with the real refresh token and, on
// success, writes the new tokens to the host file.
func (b *Broker) refreshUpstream(ctx context.Context, host *Host, authority string, tr http.RoundTripper, r *http.Request, treq *tokenRequest, sec Secret, observed [32]byte) (*upstreamToken, error) {
	cur, err := b.readCred(sec)
	if err != nil {
		return nil, err
	}
	if sha256.Sum256([]byte(cur.refresh)) != observed && cur.access != "" && cur.expiry.After(b.opts.Now().Add(reuseMargin)) {
		// Another refresh finished between our caller's look at the file
		// and this flight: use its tokens, do not rotate them again.
		b.mu.RLock()
		doc := map[string]any{}
		for k, v := range b.lastResp[credKey(sec)] {
			doc[k] = v
		}
		b.mu.RUnlock()
		doc["access_token"] = cur.access
		doc["refresh_token"] = cur.refresh
		doc["expires_in"] = int64(cur.expiry.Sub(b.opts.Now()) / time.Second)
		return &upstreamToken{status: http.StatusOK, header: http.Header{"Content-Type": {"application/json"}}, doc: doc, access: cur.access, refresh: cur.refresh}, nil
	}
	out := treq.clone()
	out.set("refresh_token", cur.refresh)
	body := out.encode()
	// The table's host, never the guest's Host header.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+authority+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("refresh request: %w", err)
	}
	for k, v := range r.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Content-Length", "Transfer-Encoding", "Accept-Encoding", "Keep-Alive", "Te", "Upgrade", "Proxy-Connection":
			continue
		}
		req.Header[k] = v
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("refresh at %s: %w", host.Name, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody+1))
	if err != nil {
		return nil, fmt.Errorf("refresh at %s: read response: %w", host.Name, err)
	}
	if len(raw) > maxTokenBody {
		return nil, fmt.Errorf("refresh at %s: response larger than %d bytes", host.Name, maxTokenBody)
	}
	up := &upstreamToken{status: resp.StatusCode, header: resp.Header.Clone(), raw: raw}
	if resp.StatusCode != http.StatusOK {
		b.log.Warn("broker: upstream refused the refresh", "host", host.Name, "credential", sec.Cred, "status", resp.StatusCode)
		return up, nil
	}
	d, err := decodeJSON(raw)
	doc, ok := d.(map[string]any)
	if err != nil || !ok {
		return nil, fmt.Errorf("refresh at %s: response is not a JSON object", host.Name)
	}
	up.access, _ = doc["access_token"].(string)
	up.refresh, _ = doc["refresh_token"].(string)
	if up.access == "" {
		return nil, fmt.Errorf("refresh at %s: response has no access_token", host.Name)
	}
	if up.refresh == "" {
		up.refresh = cur.refresh // some servers keep the refresh token
	}
	var expiry time.Time
	if n, ok := doc["expires_in"].(json.Number); ok {
		if s, err := n.Int64(); err == nil && s > 0 {
			expiry = b.opts.Now().Add(time.Duration(s) * time.Second)
		}
	}
	if err := b.writeCred(sec, up.access, up.refresh, expiry); err != nil {
		return nil, err
	}
	up.doc = doc
	tmpl := map[string]any{}
	for k, v := range doc {
		if k != "access_token" && k != "refresh_token" && k != "id_token" {
			tmpl[k] = v
		}
	}
	b.mu.Lock()
	b.lastResp[credKey(sec)] = tmpl
	b.mu.Unlock()
	b.log.Info("broker: credential refreshed on the host", "credential", sec.Cred, "file", sec.File)
	return up, nil
}

// writeCred stores new tokens in the host file: same shape, other fields
// kept, same mode, replaced atomically. A symlinked file (dotfile
// managers) is written at its target, never replaced by a plain file.
func (b *Broker) writeCred(sec Secret, access, refresh string, expiry time.Time) error {
	b.fileMu.Lock()
	defer b.fileMu.Unlock()
	p, err := filepath.EvalSymlinks(sec.File)
	if err != nil {
		return fmt.Errorf("update %s: %w", sec.File, err)
	}
	doc, err := readHostJSON(p)
	if err != nil {
		return err
	}
	st, err := statMode(p)
	if err != nil {
		return err
	}
	parent := sec.Path[:len(sec.Path)-1]
	ok := setPath(doc, sec.Path, refresh) &&
		setPath(doc, append(append([]string(nil), parent...), accessField(sec)), access)
	if ok && !expiry.IsZero() && len(sec.ExpiryPath) > 0 {
		ok = setPath(doc, sec.ExpiryPath, json.Number(strconv.FormatInt(expiry.UnixMilli(), 10)))
	}
	if !ok {
		return fmt.Errorf("update %s: %s is gone", sec.File, strings.Join(parent, "."))
	}
	data, err := encodeJSON(doc)
	if err != nil {
		return fmt.Errorf("update %s: %w", sec.File, err)
	}
	return writeFileAtomic(p, append(data, '\n'), st)
}
