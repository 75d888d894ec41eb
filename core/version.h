/* version.h - the program version that responses, logs and generated images carry. */
#ifndef FX_VERSION_H
#define FX_VERSION_H

#define FX_VERSION "0.1.0"

#endif
