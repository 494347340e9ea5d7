"""User-Mode Linux backend: process supervision, console, mconsole and networking of unprivileged `linux` guests."""
