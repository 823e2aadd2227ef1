// Intel ISA-L erasure coding (Debian libisal-dev): Cauchy matrices, GF(2^8) tables and
// the vectorised encoder that TesseraClient uses for parity and for rebuilding units.
#include <isa-l/erasure_code.h>
