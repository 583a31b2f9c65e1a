import FleetkeepProtocol
import Foundation
import SQLite

/// Records a read of personal data before it is shown: when the record cannot be written, the page fails and
/// shows nothing. The privacy audit log implements this (`PrivacyAuditReads`).
public protocol PersonalDataAudit: Sendable {
    func recordRead(actor: String, action: String, subject: String, reason: String) throws
}

/// `PersonalDataAudit` in the privacy work's hash-chained audit log (`privacy audit` lists and verifies it).
public final class PrivacyAuditReads: PersonalDataAudit {
    let privacy: PrivacyService

    public init(privacy: PrivacyService) { self.privacy = privacy }

    public func recordRead(actor: String, action: String, subject: String, reason: String) throws {
        _ = try privacy.audit(Access(actor: actor, reason: reason), action: action, subject: subject)
    }
}
