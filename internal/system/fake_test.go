package system

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestFakeRecordsAndScripts(t *testing.T) {
	ctx := context.Background()
	f := &Fake{}
	f.On("qemu-img info", `{"virtual-size": 1}`, nil)
	f.On("qemu-img info --output=json /b", `{"virtual-size": 2}`, nil)
	f.Once("qemu-img info", "first", nil)
	f.Fail("ip link add", "RTNETLINK answers: File exists", 2)

	steps := []struct {
		argv    []string
		want    string
		wantErr bool
	}{
		{argv: []string{"qemu-img", "info", "--output=json", "/a"}, want: "first"},
		{argv: []string{"qemu-img", "info", "--output=json", "/a"}, want: `{"virtual-size": 1}`},
		{argv: []string{"qemu-img", "info", "--output=json", "/b"}, want: `{"virtual-size": 2}`},
		{argv: []string{"ip", "link", "add", "bg0", "type", "tuntap"}, wantErr: true},
		{argv: []string{"true"}, want: ""},
	}
	for _, s := range steps {
		out, err := f.Run(ctx, s.argv[0], s.argv[1:]...)
		if (err != nil) != s.wantErr {
			t.Fatalf("%q: err = %v", s.argv, err)
		}
		if string(out) != s.want {
			t.Fatalf("%q: out = %q, want %q", s.argv, out, s.want)
		}
	}

	var ce *CmdError
	_, err := f.Run(ctx, "ip", "link", "add", "x")
	if !errors.As(err, &ce) || ce.ExitCode != 2 || !strings.Contains(err.Error(), "RTNETLINK") ||
		!slices.Equal(ce.Argv, []string{"ip", "link", "add", "x"}) {
		t.Fatalf("Fail response = %#v", err)
	}

	want := []string{
		"qemu-img info --output=json /a",
		"qemu-img info --output=json /a",
		"qemu-img info --output=json /b",
		"ip link add bg0 type tuntap",
		"true",
		"ip link add x",
	}
	if got := f.Commands(); !slices.Equal(got, want) {
		t.Fatalf("Commands() = %q, want %q", got, want)
	}
}

func TestFakeStrictHandlerAndOpts(t *testing.T) {
	ctx := context.Background()
	f := &Fake{Strict: true}
	if _, err := f.Run(ctx, "rm", "-rf", "/"); err == nil {
		t.Fatal("strict fake accepted an unscripted command")
	}

	links := map[string]bool{}
	f = &Fake{Handler: func(_ context.Context, c FakeCall) ([]byte, error) {
		if c.Argv[0] == "ip" && c.Argv[2] == "add" {
			links[c.Argv[3]] = true
		}
		return nil, nil
	}}
	var stdout bytes.Buffer
	f.On("mmdebstrap", "I: done\n", nil)
	out, err := f.RunIn(ctx, RunOpts{Dir: "/tmp", Env: []string{"A=1"}, Stdin: strings.NewReader("in"), Stdout: &stdout}, "mmdebstrap", "bookworm")
	if err != nil || len(out) != 0 || stdout.String() != "I: done\n" {
		t.Fatalf("streamed fake run = %q, %v, stdout %q", out, err, stdout.String())
	}
	if _, err := f.Run(ctx, "ip", "link", "add", "bg0"); err != nil {
		t.Fatal(err)
	}
	if !links["bg0"] {
		t.Fatal("handler did not see the command")
	}
	c := f.Calls()[0]
	if c.Dir != "/tmp" || !slices.Equal(c.Env, []string{"A=1"}) || string(c.Stdin) != "in" {
		t.Fatalf("recorded call = %+v", c)
	}
	f.Reset()
	if len(f.Calls()) != 0 {
		t.Fatal("Reset kept calls")
	}
}
