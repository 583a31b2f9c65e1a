#pragma once
// Linux flags that Swift's Glibc module leaves out because glibc only defines them under _GNU_SOURCE.

/// O_DIRECT for open(2) and fcntl(F_SETFL) on this architecture.
int fleetkeep_o_direct(void);
