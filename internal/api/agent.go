package api

// Wire types spoken between the daemon and banger-agent inside the guest.
// The daemon forwards the same ExecRequest it receives from the CLI, so the
// CLI, the daemon and the agent share one definition.

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

// Agent routes, shared by the agent and internal/agentclient.
const (
	AgentHealthPath = "/healthz"
	AgentExecPath   = "/v1/exec"
	// AgentFilesPath takes a tar stream: PUT ?dir=/abs/path[&mkdir=1].
	AgentFilesPath = "/v1/files"
	// AgentWorkspacePath replaces a guest workspace: POST with a
	// workspace.ApplyRequest, upgraded to MuxProtocol for the streams.
	AgentWorkspacePath = "/v1/workspace"
	// AgentWorkspaceBundlePath exports a workspace's branches and tags
	// as a git bundle (banger vm workspace pull).
	AgentWorkspaceBundlePath = "/v1/workspace/bundle"
)

// SeedOpencodeEnv is the file next to the seed config that holds
// OPENCODE_SERVER_PASSWORD=..., the EnvironmentFile of the agent image's
// opencode.service (0600; a secret: never log it).
const SeedOpencodeEnv = "opencode.env"

// SeedConfig is /run/banger/seed/config.json, this VM's identity as
// `banger-agent init` applies it at boot. It holds private key material:
// it travels on the VM's read-only seed disk, never on the kernel
// command line.
type SeedConfig struct {
	Hostname string `json:"hostname"`
	// SSHHostKeys maps a key type ("ed25519", "ecdsa", "rsa") to an
	// OpenSSH private key in PEM form.
	SSHHostKeys    map[string]string `json:"ssh_host_keys,omitempty"`
	AuthorizedKeys string            `json:"authorized_keys,omitempty"`
	// AuthFiles are the host user's coding-agent credentials, written
	// under /root with mode 0600 at every boot, before sshd and the
	// agents start. They are secrets: never log their contents.
	AuthFiles []SeedFile `json:"auth_files,omitempty"`
}

// SeedFile is one file carried by the seed config. Path is relative to
// /root and must stay inside it.
type SeedFile struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
}
