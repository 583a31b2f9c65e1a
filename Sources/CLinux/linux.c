// Compiled as plain C (not imported as a module), so _GNU_SOURCE takes effect before glibc's headers are read.
#define _GNU_SOURCE
#include <fcntl.h>
#include "CLinux.h"

int fleetkeep_o_direct(void) { return O_DIRECT; }

#include <sys/prctl.h>

int fleetkeep_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0); }
