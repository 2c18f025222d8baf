#ifndef SOULFRA_CSQLITE_H
#define SOULFRA_CSQLITE_H
/* libsqlite3 for the control plane's state. Everything Swift can call directly comes through <sqlite3.h>;
   the shim adds what it cannot: SQLITE_TRANSIENT is a macro casting -1 to a function pointer, so the binds
   that copy their bytes have wrappers here. */
#include <sqlite3.h>

int sf_sqlite_bind_text(sqlite3_stmt *stmt, int index, const char *text, int bytes);
int sf_sqlite_bind_blob(sqlite3_stmt *stmt, int index, const void *bytes, int count);

#endif
