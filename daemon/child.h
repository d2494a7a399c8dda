/* daemon/child.h: the job child's entry point (slimd --job-child); see child.c. */
#ifndef SLIMD_CHILD_H
#define SLIMD_CHILD_H

/* Read the request on stdin, run the job, report on stdout. Returns the process exit status. */
int child_main(void);

#endif
