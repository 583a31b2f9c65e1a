import BackupEngine
import Foundation

/// The agent's command-line arguments as the bytes the shell passed, mapped like file names (see `FileName`).
///
/// Why: Swift's `CommandLine.arguments` repairs invalid UTF-8 with U+FFFD, so `restore --path` could not name a
/// file whose name is Latin-1 (which backups do keep). Mapped through `FileName`, such an argument reaches every
/// system call as its original bytes, and matches the name stored in the snapshot.
public enum RawArguments {
    /// Every argument after the program name. None when even the program name is missing: an `execve` with an empty
    /// argv on kernels before 5.18, or no /proc (Swift's runtime on Linux finds the arguments through it).
    public static func current() -> [String] {
        guard CommandLine.argc > 1 else { return [] }
        return (1..<Int(CommandLine.argc)).compactMap { index in
            CommandLine.unsafeArgv[index].map { argument in
                FileName.string(from: UnsafeRawBufferPointer(start: argument, count: strlen(argument)))
            }
        }
    }
}
