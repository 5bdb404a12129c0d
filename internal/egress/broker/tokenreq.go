package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/url"
)

// tokenRequest is an OAuth token endpoint request body from the guest,
// JSON (Anthropic's endpoints) or a form (OAuth's standard encoding). It
// is hostile input: parseTokenRequest is fuzzed.
type tokenRequest struct {
	json map[string]any
	form url.Values
}

var errTokenBody = errors.New("token request body is neither a JSON object nor a form")

// parseTokenRequest parses body by its content type, falling back to
// its first byte when the type says neither.
func parseTokenRequest(contentType string, body []byte) (*tokenRequest, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	isJSON := mt == "application/json" || (mt != "application/x-www-form-urlencoded" && len(bytes.TrimSpace(body)) > 0 && bytes.TrimSpace(body)[0] == '{')
	if isJSON {
		d, err := decodeJSON(body)
		if err != nil {
			return nil, errTokenBody
		}
		o, ok := d.(map[string]any)
		if !ok {
			return nil, errTokenBody
		}
		return &tokenRequest{json: o}, nil
	}
	v, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errTokenBody
	}
	return &tokenRequest{form: v}, nil
}

// get returns a string field ("" when missing or not a string). A form
// field given twice is ambiguous and reads as "".
func (t *tokenRequest) get(k string) string {
	if t.json != nil {
		s, _ := t.json[k].(string)
		return s
	}
	if vs := t.form[k]; len(vs) == 1 {
		return vs[0]
	}
	return ""
}

func (t *tokenRequest) set(k, v string) {
	if t.json != nil {
		t.json[k] = v
		return
	}
	t.form.Set(k, v)
}

func (t *tokenRequest) clone() *tokenRequest {
	if t.json != nil {
		o := make(map[string]any, len(t.json))
		for k, v := range t.json {
			o[k] = v
		}
		return &tokenRequest{json: o}
	}
	f := url.Values{}
	for k, v := range t.form {
		f[k] = append([]string(nil), v...)
	}
	return &tokenRequest{form: f}
}

func (t *tokenRequest) encode() []byte {
	if t.json != nil {
		b, _ := json.Marshal(t.json)
		return b
	}
	return []byte(t.form.Encode())
}
