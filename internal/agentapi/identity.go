package agentapi

// AgentIdentityPath gives a guest restored from a snapshot its own
// identity: POST an IdentityRequest, answered with an IdentityReply.
// The daemon calls it right after a restore and before the VM is
// reported ready, so no two VMs restored from one snapshot share a host
// key, machine id, clock offset or random state.
const AgentIdentityPath = "/v1/identity"

// MaxIdentityBody caps the request body the agent reads (auth files
// included).
const MaxIdentityBody = 8 << 20

// IdentityRequest is what a restored guest becomes. Empty fields are
// left as they are (a parked VM waking keeps its name and keys and only
// gets the clock and fresh entropy).
type IdentityRequest struct {
	Hostname string `json:"hostname,omitempty"`
	// SSHHostKeys replaces the guest's SSH host keys (type -> OpenSSH
	// private key PEM, as in SeedConfig) and restarts sshd so the next
	// connection sees them. A secret: never log it.
	SSHHostKeys map[string]string `json:"ssh_host_keys,omitempty"`
	// MachineID is the new /etc/machine-id (32 lowercase hex digits).
	MachineID string `json:"machine_id,omitempty"`
	// UnixNano is the host's clock when the request was made; the agent
	// sets the guest's clock from it (a restored guest's clock stands at
	// the save's instant).
	UnixNano int64 `json:"unix_nano"`
	// Entropy is host randomness the agent mixes into the guest's
	// kernel RNG and credits (RNDADDENTROPY), so forks diverge at once.
	Entropy []byte `json:"entropy"`
	// AuthFiles, when non-nil, are rewritten under /root as at boot
	// (SeedConfig.AuthFiles): the VM's own credentials or placeholders.
	AuthFiles []SeedFile `json:"auth_files,omitempty"`
	// ResetConnections drops the guest's established TCP connections:
	// their peers are gone after a restore.
	ResetConnections bool `json:"reset_connections,omitempty"`
}

// IdentityReply says what the agent changed, in order (for the
// operation's log; never secrets).
type IdentityReply struct {
	Done []string `json:"done"`
}
