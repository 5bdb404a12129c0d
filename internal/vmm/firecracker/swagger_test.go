package firecracker

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"go.yaml.in/yaml/v4"
)

// The fake API checks requests against Firecracker's own API definition,
// vendored from the release named in testdata/swagger/VERSION (the one
// place the version is kept), not against a hand-copied list of fields.
var (
	//go:embed testdata/swagger/firecracker.yaml
	swaggerYAML []byte
	//go:embed testdata/swagger/VERSION
	swaggerVersion string
)

// fcAPI is the loaded definition: a router that finds the operation of a
// method and path, and the operations' schemas.
type fcAPI struct {
	doc    *openapi3.T
	router routers.Router
}

var (
	apiOnce sync.Once
	apiDef  *fcAPI
	apiErr  error
)

// firecrackerAPI loads the vendored swagger once (OpenAPI 2.0, converted
// to 3 for kin-openapi's request validator) and applies banger's rule
// denyUnknownFields to it.
func firecrackerAPI() (*fcAPI, error) {
	apiOnce.Do(func() {
		// Through JSON: kin-openapi's types decode JSON exactly (their
		// YAML path mishandles `additionalProperties: true`).
		var tree any
		if err := yaml.Unmarshal(swaggerYAML, &tree); err != nil {
			apiErr = fmt.Errorf("parse firecracker.yaml: %w", err)
			return
		}
		js, err := json.Marshal(stringKeys(tree))
		if err != nil {
			apiErr = fmt.Errorf("firecracker.yaml as JSON: %w", err)
			return
		}
		var doc2 openapi2.T
		if err := json.Unmarshal(js, &doc2); err != nil {
			apiErr = fmt.Errorf("load firecracker.yaml: %w", err)
			return
		}
		doc, err := openapi2conv.ToV3(&doc2)
		if err != nil {
			apiErr = fmt.Errorf("convert firecracker.yaml to OpenAPI 3: %w", err)
			return
		}
		// The swagger's host ("localhost") says nothing about a Unix
		// socket: match on paths alone.
		doc.Servers = openapi3.Servers{{URL: "/"}}
		denyUnknownFields(doc)
		if err := doc.Validate(context.Background()); err != nil {
			apiErr = fmt.Errorf("firecracker.yaml is not a valid definition: %w", err)
			return
		}
		r, err := gorillamux.NewRouter(doc)
		if err != nil {
			apiErr = fmt.Errorf("route firecracker.yaml: %w", err)
			return
		}
		apiDef = &fcAPI{doc: doc, router: r}
	})
	return apiDef, apiErr
}

// stringKeys turns YAML maps (whose keys may be integers: response codes)
// into JSON objects.
func stringKeys(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case map[string]any:
		for k, e := range x {
			x[k] = stringKeys(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = stringKeys(e)
		}
		return x
	}
	return v
}

// denyUnknownFields is banger's rule, not the swagger's: the definition
// leaves additionalProperties unset (JSON Schema then allows any extra
// field), but Firecracker's request types are Rust structs with
// #[serde(deny_unknown_fields)] (src/vmm/src/vmm_config/*.rs), so a
// misspelt field is refused by the real API. Every object schema that
// lists its properties and does not itself say otherwise (the swagger
// sets additionalProperties: true on the two free-form ones, MMDS data and
// CPU config modifiers) is closed here, so the refusal comes out of the
// schema validator with the definition's own property lists.
func denyUnknownFields(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(*openapi3.SchemaRef)
	walk = func(ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			no := false
			s.AdditionalProperties.Has = &no
		}
		for _, p := range s.Properties {
			walk(p)
		}
		walk(s.Items)
		walk(s.AdditionalProperties.Schema)
		for _, l := range []openapi3.SchemaRefs{s.AllOf, s.AnyOf, s.OneOf} {
			for _, x := range l {
				walk(x)
			}
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, rb := range doc.Components.RequestBodies {
		if rb.Value != nil {
			for _, mt := range rb.Value.Content {
				walk(mt.Schema)
			}
		}
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					walk(mt.Schema)
				}
			}
		}
	}
}

// errNoRoute is the swagger's answer to a method and path it does not
// define.
var errNoRoute = fmt.Errorf("no such method and path in the Firecracker API")

// validate checks a request's method, path, path parameters and body
// against the definition. It returns the matched route (its Path is the
// template, e.g. "/drives/{drive_id}") and leaves r.Body readable.
func (a *fcAPI) validate(r *http.Request, body []byte) (*routers.Route, map[string]string, error) {
	route, params, err := a.router.FindRoute(r)
	if err != nil {
		return nil, nil, errNoRoute
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	in := &openapi3filter.RequestValidationInput{
		Request:    r,
		PathParams: params,
		Route:      route,
		Options:    &openapi3filter.Options{MultiError: false},
	}
	if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
		return route, params, conciseError(err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return route, params, nil
}

// conciseError keeps a validation error to one line: which field and
// why (kin-openapi's own text carries the whole schema and value).
func conciseError(err error) error {
	var se *openapi3.SchemaError
	if errors.As(err, &se) {
		field := strings.Join(se.JSONPointer(), ".")
		if field == "" {
			return fmt.Errorf("body: %s", se.Reason)
		}
		return fmt.Errorf("field `%s`: %s", field, se.Reason)
	}
	var re *openapi3filter.RequestError
	if errors.As(err, &re) {
		if re.Parameter != nil {
			return fmt.Errorf("parameter `%s`: %s", re.Parameter.Name, re.Reason)
		}
		return fmt.Errorf("request: %s", re.Reason)
	}
	return err
}

// TestSwaggerPinned: VERSION and the vendored definition agree, so the
// version lives in one place that cannot drift from the file.
func TestSwaggerPinned(t *testing.T) {
	a, err := firecrackerAPI()
	if err != nil {
		t.Fatal(err)
	}
	if want := "v" + a.doc.Info.Version; strings.TrimSpace(swaggerVersion) != want {
		t.Fatalf("testdata/swagger/VERSION says %q, firecracker.yaml is %s", strings.TrimSpace(swaggerVersion), want)
	}
}

// TestSwaggerRefuses: the schema itself (not a hand-written rule) refuses
// what Firecracker refuses: a misspelt field, a missing required one, a
// wrong type, a value out of the documented range, a path the API does
// not have. And it accepts the bodies banger sends.
func TestSwaggerRefuses(t *testing.T) {
	a, err := firecrackerAPI()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, method, path, body string
		ok                       bool
	}{
		{"machine config", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":1024,"smt":false}`, true},
		{"misspelt field", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mb":1024}`, false},
		{"extra field with all required ones", "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":1024,"vcpus":2}`, false},
		{"misspelt nested field", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/x","rate_limiter":{"bandwith":{"size":1,"refill_time":1}}}`, false},
		{"missing required field", "PUT", "/boot-source", `{"boot_args":"console=ttyS0"}`, false},
		{"wrong type", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":"yes","path_on_host":"/x"}`, false},
		{"fractional integer", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":1024}`, false},
		{"vcpu count over the documented maximum", "PUT", "/machine-config", `{"vcpu_count":64,"mem_size_mib":1024}`, false},
		{"unknown enum value", "PUT", "/actions", `{"action_type":"Reboot"}`, false},
		{"action", "PUT", "/actions", `{"action_type":"InstanceStart"}`, true},
		{"vm state", "PATCH", "/vm", `{"state":"Paused"}`, true},
		{"undefined path", "PUT", "/machine-configs", `{}`, false},
		{"undefined method", "DELETE", "/drives/rootfs", ``, false},
		{"free-form mmds data stays open", "PUT", "/mmds", `{"anything":{"goes":1}}`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(tc.method, "http://localhost"+tc.path, strings.NewReader(tc.body))
			r.Header.Set("Content-Type", "application/json")
			_, _, err := a.validate(r, []byte(tc.body))
			if tc.ok && err != nil {
				t.Fatalf("refused a valid request: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("the schema accepted %s %s %s", tc.method, tc.path, tc.body)
			}
		})
	}
}
