package agentapi

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestEgressLineRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := EgressOpen{Kind: EgressKindTCP, Dst: "198.18.0.1:443", PID: 7, Process: "node", Session: "s1"}
	if err := WriteEgressLine(&buf, in); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("raw bytes after")
	r := bufio.NewReaderSize(&buf, 16)
	var out EgressOpen
	if err := ReadEgressLine(r, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("%+v != %+v", out, in)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "raw bytes after" {
		t.Fatalf("line reader took %q", rest)
	}
}

func TestReadEgressLineRefuses(t *testing.T) {
	for _, in := range []string{
		strings.Repeat(" ", MaxEgressLine) + "{}\n",
		`{"kind":"tcp","x":1}` + "\n",
		`{"kind":"tcp"} {}` + "\n",
		`{"kind":"tcp"}`,
		"\n",
	} {
		var v EgressOpen
		if err := ReadEgressLine(bufio.NewReader(strings.NewReader(in)), &v); err == nil {
			t.Errorf("accepted %.40q", in)
		}
	}
	var v EgressOpen
	err := ReadEgressLine(bufio.NewReader(strings.NewReader(strings.Repeat("a", 3*MaxEgressLine))), &v)
	if !errors.Is(err, ErrEgressLineTooLong) {
		t.Fatalf("long line: %v", err)
	}
	if err := WriteEgressLine(io.Discard, EgressReply{Message: strings.Repeat("m", MaxEgressLine)}); !errors.Is(err, ErrEgressLineTooLong) {
		t.Fatalf("long write: %v", err)
	}
}

func FuzzReadEgressLine(f *testing.F) {
	f.Add([]byte(`{"kind":"tcp","dst":"1.2.3.4:443","pid":1,"process":"curl","session":"s"}` + "\nrest"))
	f.Add([]byte(`{"kind":"dns"}` + "\n\x00\x1c"))
	f.Add([]byte(`{"allow":false,"message":"no"}` + "\n"))
	f.Add([]byte("{\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(b), 16)
		var v EgressOpen
		err := ReadEgressLine(r, &v)
		i := bytes.IndexByte(b, '\n')
		if err == nil {
			if i < 0 || i+1 > MaxEgressLine {
				t.Fatalf("accepted a line without newline or too long (%d)", i)
			}
			rest, _ := io.ReadAll(r)
			if !bytes.Equal(rest, b[i+1:]) {
				t.Fatal("read past the newline")
			}
		}
		var rep EgressReply
		_ = ReadEgressLine(bufio.NewReader(bytes.NewReader(b)), &rep)
	})
}
