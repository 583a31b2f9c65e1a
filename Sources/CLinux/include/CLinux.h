#pragma once
// Linux flags and calls that Swift's Glibc module leaves out because glibc only declares them under _GNU_SOURCE
// (or in headers the module does not include).

/// O_DIRECT for open(2) and fcntl(F_SETFL) on this architecture.
int fleetkeep_o_direct(void);

/// prctl(PR_SET_PDEATHSIG, signal): the kernel sends `signal` to this process when its parent thread exits (prctl is
/// variadic, which Swift cannot call). Returns 0 or -1 with errno.
int fleetkeep_set_parent_death_signal(int signal);

/// O_PATH for open(2): a descriptor that names a file (a symlink itself, with O_NOFOLLOW) without opening it.
int fleetkeep_o_path(void);

/// AT_EMPTY_PATH for the *at(2) calls: act on the descriptor itself.
int fleetkeep_at_empty_path(void);

/// setfsuid(2)/setfsgid(2): the calling thread's file-system identity (per thread on Linux, unlike setuid).
/// Each returns the identity before the call; passing (unsigned)-1 changes nothing and so reads the current one.
int fleetkeep_setfsuid(unsigned int uid);
int fleetkeep_setfsgid(unsigned int gid);

/// prctl(PR_SET_NAME, name): the calling thread's name as ps, top and gdb show it, cut to 15 bytes. Foundation's
/// Thread.name reaches the kernel only when set from the running thread, and is refused there beyond 15 bytes.
/// Returns 0 or -1 with errno.
int fleetkeep_set_thread_name(const char *name);

/// Blocks the calling thread has read from storage so far: getrusage(RUSAGE_THREAD)'s ru_inblock (the reads it
/// submitted, file-system metadata included; a page-cache hit adds nothing). -1 with errno on failure.
long fleetkeep_thread_blocks_read(void);

/// SEEK_DATA and SEEK_HOLE for lseek(2): the next byte of data, or of a hole, at or after an offset.
int fleetkeep_seek_data(void);
int fleetkeep_seek_hole(void);

/// getdents64(2): the entries of the directory open at `descriptor`, from its current offset, as struct
/// linux_dirent64 records (d_ino: 8 bytes, d_off: 8, d_reclen: 2, d_type: 1, then the name and its NUL) packed into
/// `buffer`; returns the bytes filled, 0 at the end, or -1 with errno. The same call readdir(3) makes, without the
/// DIR stream that fdopendir builds around a descriptor it takes over.
long fleetkeep_getdents64(int descriptor, void *buffer, unsigned long size);
