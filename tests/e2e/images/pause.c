/*
 * pause: the pod sandbox process of the e2e's locally built pause image (tests/e2e/images).
 *
 * As PID 1 of a pod's PID namespace it holds the namespaces open and does nothing else:
 *   - reaps every child that exits (SIGCHLD), so zombies of a shared PID namespace go away;
 *   - exits 0 at once on SIGINT or SIGTERM (PID 1 ignores signals it has no handler for,
 *     so without these handlers a runtime's stop would always wait for its SIGKILL);
 *   - otherwise sleeps in pause() forever.
 * `pause -v` prints the version and exits 0. Built static: musl-gcc -static -Os -s.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "1.0"

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  int saved = errno;
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

static int handle(int sig, void (*fn)(int), int flags) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sa.sa_flags = flags;
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "-v") == 0) {
    printf("pause %s (node-attach e2e)\n", VERSION);
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "usage: %s [-v]\n", argv[0]);
    return 2;
  }
  if (getpid() != 1)
    fprintf(stderr, "pause: warning: not running as PID 1\n");
  if (handle(SIGINT, on_stop, 0) || handle(SIGTERM, on_stop, 0) ||
      handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART)) {
    perror("pause: sigaction");
    return 1;
  }
  /* Children that exited before the handler was installed. */
  on_child(SIGCHLD);
  for (;;)
    pause();
}
