import CommandLineSupport
import Crypto
import Foundation

/// Operator commands for disaster recovery: the recovery key pair and opening escrowed repository keys.
/// The controller holds only the public half, so a stolen controller database does not open any backup.
public enum RecoveryCommands {
    /// `recovery-key create --out FILE` | `recovery-key set PUBLIC_KEY --data DIR`
    public static func recoveryKey(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "out"])
        switch arguments.positionals.first {
        case "create":
            guard let out = arguments.value("out") else { throw UsageError("--out FILE is required (keep that file offline)") }
            guard !FileManager.default.fileExists(atPath: out) else { throw ControllerError("\(out) already exists; refusing to overwrite a recovery key") }
            let key = X25519PrivateKey()
            try writePrivateFile(out, Array((Base64URL.encode(key.rawRepresentation) + "\n").utf8))
            print("recovery private key written to \(out) (mode 0600): store it offline, NOT on the controller")
            print("recovery public key: \(Base64URL.encode(key.publicKey.rawRepresentation))")
            print("next: fleetkeep-controller recovery-key set \(Base64URL.encode(key.publicKey.rawRepresentation)) --data DIR")
            return 0
        case "set":
            let text = try arguments.positional(1, "PUBLIC_KEY (from `recovery-key create`)")
            guard let raw = Base64URL.decode(text), (try? X25519PublicKey(rawRepresentation: raw)) != nil else {
                throw UsageError("'\(text)' is not a base64url X25519 public key")
            }
            let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
            try store.setSetting("recovery_public_key", text)
            print("agents will escrow their repository keys to \(text)")
            return 0
        default:
            throw UsageError("expected `recovery-key create --out FILE` or `recovery-key set PUBLIC_KEY`")
        }
    }

    /// `escrow open AGENT_ID --recovery-key FILE --out FILE`: recovers a dead server's repository key file.
    public static func escrow(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "recovery-key", "out"])
        guard arguments.positionals.first == "open" else { throw UsageError("expected `escrow open AGENT_ID --recovery-key FILE --out FILE`") }
        let agentID = try arguments.positional(1, "AGENT_ID")
        guard let keyPath = arguments.value("recovery-key"), let out = arguments.value("out") else {
            throw UsageError("--recovery-key FILE and --out FILE are required")
        }
        guard let text = try? String(contentsOfFile: keyPath, encoding: .utf8),
              let raw = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)),
              let recovery = try? X25519PrivateKey(rawRepresentation: raw) else {
            throw ControllerError("\(keyPath) is not a recovery private key from `recovery-key create`")
        }
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        guard let (sealed, created) = try store.latestEscrow(agentID: agentID) else {
            throw ControllerError("no escrowed key for agent \(agentID); see `fleetkeep-controller agents`")
        }
        let keyFile: [UInt8]
        do { keyFile = try SealedBox.open(sealed, with: recovery) } catch {
            throw ControllerError("the recovery key \(keyPath) does not open the escrow of \(agentID) (wrong recovery key?)")
        }
        try writePrivateFile(out, keyFile)
        print("repository key of \(agentID) (escrowed \(Date(timeIntervalSince1970: TimeInterval(created)))) written to \(out) (mode 0600)")
        return 0
    }
}
