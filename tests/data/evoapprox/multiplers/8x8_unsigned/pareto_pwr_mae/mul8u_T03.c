/***
* A test fixture in the EvoApproxLib file format (written for amsim's tests; not a library circuit).
***/
// MAE% = 0.097 %
// MAE = 63.75 
// WCE% = 0.39 %
// WCE = 255 
// WCRE% = 100.00 %
// EP% = 49.80 %
// MRE% = 0.00 %
// MSE = 10858.750 
// PDK45_PWR = 0.250 mW
// PDK45_AREA = 400.0 um2
// PDK45_DELAY = 1.10 ns
#include <stdint.h>
#include <stdlib.h>

uint64_t mul8u_T03(const uint64_t B,const uint64_t A)
{
  return A * (B & ~(uint64_t)1);
}
