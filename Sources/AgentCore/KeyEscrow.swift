import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation

/// Escrows the repository key file with the controller, sealed to the operator's recovery public key, so a dead
/// server's off-site copy can be opened. The controller stores the sealed box and cannot open it.
public enum KeyEscrow {
    public static func deposit(state: AgentState, keyFile: String) throws -> String {
        guard let contents = FileManager.default.contents(atPath: keyFile) else {
            throw AgentError("cannot read repository key file \(keyFile); run `fleetkeep-agent repo init` first")
        }
        let connection = try Enrollment.connection(state: state)
        let recipient = try connection.post(APIPath.escrowRecipient, [String: String](), as: EscrowRecipient.self)
        guard let text = recipient.recoveryPublicKey, let raw = Base64URL.decode(text),
              let publicKey = try? X25519PublicKey(rawRepresentation: raw) else {
            throw AgentError("the controller has no recovery key yet; the operator runs `fleetkeep-controller recovery-key create` and `recovery-key set`")
        }
        let sealed = try SealedBox.seal(Array(contents), to: publicKey)
        _ = try connection.post(APIPath.escrow, EscrowDeposit(sealedKey: Base64URL.encode(sealed), recoveryPublicKey: text), as: [String: String].self)
        return text
    }

    /// `fleetkeep-agent escrow [--state DIR] [--key-file FILE] [--config FILE]`
    public static func command(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "key-file", "config"])
        try arguments.expectPositionals(atMost: 0)
        var config = try AgentConfig.load(path: arguments.value("config"))
        if let keyFile = arguments.value("key-file") { config.keyFile = keyFile }
        let recipient = try deposit(state: AgentCommands.state(arguments), keyFile: config.keyFile)
        print("repository key \(config.keyFile) escrowed with the controller, sealed to recovery key \(recipient.prefix(12))…")
        return 0
    }
}
