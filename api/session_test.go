package api

import (
	"errors"
	"net/url"
	"testing"
)

func TestSessionLogsQueryRoundTrip(t *testing.T) {
	t.Parallel()
	for _, req := range []SessionLogsRequest{
		{},
		{Stream: SessionStreamStderr},
		{Stream: SessionStreamStdout, Tail: 20, Follow: true},
	} {
		got, err := ParseSessionLogsRequest(req.Query())
		if err != nil || got != req {
			t.Errorf("%+v came back as %+v, %v", req, got, err)
		}
	}
	if got, _ := ParseSessionLogsRequest(url.Values{"follow": {"true"}}); !got.Follow {
		t.Error("follow=true is a follow")
	}
	for _, bad := range []string{"-1", "x", "3lines"} {
		_, err := ParseSessionLogsRequest(url.Values{"tail": {bad}})
		var ae *Error
		if !errors.As(err, &ae) || ae.Code != CodeInvalid {
			t.Errorf("tail=%s: %v", bad, err)
		}
	}
}
