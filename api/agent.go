package api

// Wire types the daemon and banger-agent inside the guest share with
// clients: the daemon forwards the same ExecRequest it receives from a
// client to the agent, and reports the agent's health in a VM's view.
// What only the daemon and the agent speak is in internal/agentapi.

// AgentHealth is the agent's answer to GET /healthz.
type AgentHealth struct {
	Version       string  `json:"version"`
	BootID        string  `json:"boot_id"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Hostname      string  `json:"hostname"`
}

// ExecRequest starts one guest command. It is the JSON body of
// POST /v1/exec (agent) and POST /v1/vms/{name}/exec (daemon); both answer
// "101 Switching Protocols" with `Upgrade: banger-mux/1` and then speak
// internal/mux frames on the connection.
type ExecRequest struct {
	Argv  []string          `json:"argv"`
	Env   map[string]string `json:"env,omitempty"`
	Dir   string            `json:"dir,omitempty"`
	TTY   bool              `json:"tty,omitempty"`
	Rows  uint16            `json:"rows,omitempty"`
	Cols  uint16            `json:"cols,omitempty"`
	Stdin bool              `json:"stdin,omitempty"`
}

// ExitStatus is the payload of the final mux exit frame.
type ExitStatus struct {
	// Code follows shell conventions: 0..255 for a normal exit, 128+N for
	// death by signal N, 127 when the command was not found, 126 when it
	// could not be executed.
	Code   int    `json:"code"`
	Signal int    `json:"signal,omitempty"`
	Error  string `json:"error,omitempty"`
}

// MuxProtocol is the Upgrade token of exec and attach streams.
const MuxProtocol = "banger-mux/1"
