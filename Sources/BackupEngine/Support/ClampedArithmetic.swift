extension Int64 {
    /// The sum, or `Int64.max` past it: totals of file sizes an account chose (a sparse file can claim 8 EiB) must
    /// not trap the backup or the restore that reports them.
    func addingClamped(_ other: Int64) -> Int64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? (other < 0 ? .min : .max) : sum
    }
}
