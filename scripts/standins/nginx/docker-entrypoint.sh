#!/bin/sh
# Run the executable scripts of /docker-entrypoint.d in name order when the command is nginx, then the command.
set -e
case "$1" in
  nginx | nginx-debug)
    for script in /docker-entrypoint.d/*.sh; do
      [ -f "$script" ] || continue
      if [ -x "$script" ]; then
        echo "$0: running $script"
        "$script"
      else
        echo "$0: ignoring $script, not executable"
      fi
    done
    ;;
esac
exec "$@"
