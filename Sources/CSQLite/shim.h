// SQLite's C API, used only as the baseline of `tessera bench engine`.
#include <sqlite3.h>
