import Foundation

/// How large the local repository is, for the controller's repository-size chart.
public enum RepositoryUsage {
    /// The bytes of every regular file under `root` (symbolic links are not followed), or nil when `root` cannot be
    /// read. A file removed while it is counted (a prune running beside it) is skipped.
    public static func bytes(root: String) -> Int64? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else { return nil }
        let keys: [URLResourceKey] = [.isRegularFileKey, .fileSizeKey]
        guard let walk = FileManager.default.enumerator(at: URL(fileURLWithPath: root), includingPropertiesForKeys: keys,
                                                        options: [], errorHandler: { _, _ in true }) else { return nil }
        var total: Int64 = 0
        for case let url as URL in walk {
            guard let values = try? url.resourceValues(forKeys: Set(keys)), values.isRegularFile == true, let size = values.fileSize else { continue }
            total = total.addingReportingOverflow(Int64(size)).partialValue
        }
        return total
    }
}
