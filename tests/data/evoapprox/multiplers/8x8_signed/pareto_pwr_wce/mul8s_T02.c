/***
* A test fixture in the EvoApproxLib file format (written for amsim's tests; not a library circuit).
***/
// MAE% = 0.002 %
// MAE = 1 
// WCE% = 0.00 %
// WCE = 3 
// WCRE% = 100.00 %
// EP% = 50.00 %
// MRE% = 0.00 %
// MSE = 2.250 
// PDK45_PWR = 0.300 mW
// PDK45_AREA = 520.5 um2
// PDK45_DELAY = 1.30 ns
#include <stdint.h>
#include <stdlib.h>

int16_t mul8s_T02(int8_t A, int8_t B)
{
  return (int16_t)((A * B) & ~3);
}
