package mux

// Input says what to do with each kind of frame a client sends to a
// command's end of a stream (the agent's exec, a session's attacher).
// A nil function drops its frames.
type Input struct {
	Stdin      func(p []byte)
	StdinClose func()
	Resize     func(rows, cols uint16)
	Signal     func(sig int)
	// Other gets the type of any other frame (output or exit frames, which
	// a client must not send).
	Other func(t Type)
}

// ServeInput applies the client's frames from r to in until the stream
// fails or ends. A frame the reader refuses (an unknown type, a resize
// or signal payload of the wrong size, an oversize payload) ends it, as
// the client leaving would: the caller's clean-up for a gone client
// runs, so a broken or hostile client cannot feed anything further. A
// signal number out of range is dropped. Frames are applied one at a
// time, in order, on the caller's goroutine.
func ServeInput(r *Reader, in Input) {
	for {
		f, err := r.ReadFrame()
		if err != nil {
			return
		}
		switch f.Type {
		case Stdin:
			if in.Stdin != nil {
				in.Stdin(f.Payload)
			}
		case StdinClose:
			if in.StdinClose != nil {
				in.StdinClose()
			}
		case Resize:
			if rows, cols, err := DecodeResize(f.Payload); err == nil && in.Resize != nil {
				in.Resize(rows, cols)
			}
		case Signal:
			if sig, err := DecodeSignal(f.Payload); err == nil && in.Signal != nil {
				in.Signal(sig)
			}
		default:
			if in.Other != nil {
				in.Other(f.Type)
			}
		}
	}
}
