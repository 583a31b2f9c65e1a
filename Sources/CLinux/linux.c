// Compiled as plain C (not imported as a module), so _GNU_SOURCE takes effect before glibc's headers are read.
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include "CLinux.h"

int fleetkeep_o_direct(void) { return O_DIRECT; }

int fleetkeep_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0); }

int fleetkeep_o_path(void) { return O_PATH; }

int fleetkeep_at_empty_path(void) { return AT_EMPTY_PATH; }

int fleetkeep_setfsuid(unsigned int uid) { return setfsuid(uid); }

int fleetkeep_setfsgid(unsigned int gid) { return setfsgid(gid); }

int fleetkeep_set_thread_name(const char *name) { return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0); }

long fleetkeep_thread_blocks_read(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_THREAD, &usage) != 0) return -1;
    return usage.ru_inblock;
}

int fleetkeep_seek_data(void) { return SEEK_DATA; }
int fleetkeep_seek_hole(void) { return SEEK_HOLE; }

long fleetkeep_getdents64(int descriptor, void *buffer, unsigned long size) { return (long)getdents64(descriptor, buffer, size); }
