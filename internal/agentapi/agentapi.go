// Package agentapi is the protocol only the daemon and banger-agent (in
// the guest) speak: the agent's routes and the seed config it applies at
// boot. Nothing here is for clients of the daemon; the types both sides
// share with clients (ExecRequest, ExitStatus, AgentHealth) are in api.
package agentapi

// AgentVsockPort is the guest vsock port banger-agent listens on when the
// guest has AF_VSOCK (Firecracker); the host reaches it through the VMM's
// hybrid vsock socket.
const AgentVsockPort = 10000

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
	// AgentSessionsPath is the root of the agent's session routes
	// (/{ref}/... below it; ref is a session id or name).
	AgentSessionsPath = "/v1/sessions"
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
	// Egress, when set, sends the guest's network through the host's
	// egress gateway (see egress.go).
	Egress *SeedEgress `json:"egress,omitempty"`
}

// SeedEgress configures the guest side of the egress gateway.
type SeedEgress struct {
	// Gateway: redirect every outbound TCP connection and DNS query to
	// the agent, which hands them to the host.
	Gateway bool `json:"gateway"`
	// CACert is the PEM certificate of this banger instance's broker
	// CA, installed in the guest's trust store and named by
	// NODE_EXTRA_CA_CERTS; empty when no credential is brokered.
	CACert string `json:"ca_cert,omitempty"`
	// Env is added to every session's and exec's environment and to
	// /etc/environment: the API-key variables, holding placeholders.
	Env map[string]string `json:"env,omitempty"`
}

// SeedFile is one file carried by the seed config. Path is relative to
// /root and must stay inside it.
type SeedFile struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
}
