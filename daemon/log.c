/* daemon/log.c: see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_min_level = LOG_NOTICE;
char log_role = 'M';

void log_set_level(const char *name)
{
    static const char *const names[] = { "debug", "verbose", "notice", "warning" };
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, names[i])) log_min_level = i;
}

void log_raw(int level, const char *fmt, ...)
{
    static const char lc[] = "DVNW";
    char msg[1024], ts[40];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++) if (*p == '\n' || *p == '\r') *p = ' ';
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%d:%c %s.%03dZ %c %s\n", (int)getpid(), log_role, ts, (int)(tv.tv_usec / 1000),
            lc[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}

void log_from_signal(const char *msg)
{
    ssize_t r = write(STDERR_FILENO, msg, strlen(msg));
    (void)r;
}
