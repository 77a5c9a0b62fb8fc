/* The C API of libmanhole_preload.so (see docs/preload.md).
 *
 * Loaded with LD_PRELOAD and MANHOLE set, the library installs a manhole before main on its
 * own; these functions are for programs that link it (-lmanhole_preload) or find it with dlsym.
 * Every function returns 0 on success and -1 on failure; none lets a Rust panic out. */
#ifndef MANHOLE_H
#define MANHOLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Installs a manhole. `options` is written as a MANHOLE value ("activate_on=USR2, verbose=False";
 * NULL or "" for the defaults). On failure a one-line reason goes to `error` (error_size bytes,
 * NUL-terminated; `error` may be NULL). */
int manhole_install(const char *options, char *error, size_t error_size);

/* Registers the read-only value `name` (`get name` in a session): the int64_t at `value`, read
 * with a relaxed atomic load. Update it with atomic stores; it must be 8-byte aligned and live
 * as long as the process. */
int manhole_register_i64(const char *name, const int64_t *value);

/* A command: writes its answer (NUL-terminated, at most out_size bytes) into `out` and returns
 * >= 0, or returns < 0 with the reason in `out`. It runs on a manhole worker thread. */
typedef int (*manhole_command_fn)(void *context, int argc, const char *const *argv, char *out,
                                  size_t out_size);

/* Registers the command `name` (`help`: its line in `help`), run as `run(context, ...)`. */
int manhole_register_command(const char *name, const char *help, manhole_command_fn run,
                             void *context);

#ifdef __cplusplus
}
#endif

#endif /* MANHOLE_H */
