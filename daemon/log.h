/*
** daemon/log.h: one event per line on stderr, "pid:R 2026-08-22T16:18:50.123Z N message" (redis
** serverLog). The macro tests the level before formatting. log_from_signal() only calls write(2).
*/
#ifndef SLIMD_LOG_H
#define SLIMD_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_VERBOSE, LOG_NOTICE, LOG_WARNING };

extern int log_min_level;
extern char log_role;        /* 'M' main, 'C' job child */

void log_set_level(const char *name);
void log_raw(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_from_signal(const char *msg);

#define slog(level, ...) do { if ((level) >= log_min_level) log_raw((level), __VA_ARGS__); } while (0)

#endif
