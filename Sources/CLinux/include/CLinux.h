#pragma once
// Linux flags that Swift's Glibc module leaves out because glibc only defines them under _GNU_SOURCE.

/// O_DIRECT for open(2) and fcntl(F_SETFL) on this architecture.
int fleetkeep_o_direct(void);

/// prctl(PR_SET_PDEATHSIG, signal): the kernel sends `signal` to this process when its parent thread exits (prctl is
/// variadic, which Swift cannot call). Returns 0 or -1 with errno.
int fleetkeep_set_parent_death_signal(int signal);
