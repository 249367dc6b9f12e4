/*
 * bcryptprimitives.dll for Wine 8, which lacks it: Rust's standard library on Windows draws its
 * random numbers (HashMap seeds, for one) from ProcessPrng in that DLL, so without it no Rust test
 * binary starts under Wine. ProcessPrng here is RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has. Built and installed into the Wine prefix by scripts/cross-check.sh; used only to
 * run tests, never shipped.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG len);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
