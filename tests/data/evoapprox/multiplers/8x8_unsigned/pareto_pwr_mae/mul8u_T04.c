/***
* A test fixture in the EvoApproxLib file format (written for amsim's tests; not a library circuit).
***/
// MAE% = 0.000 %
// MAE = 0 
// WCE% = 0.00 %
// WCE = 0 
// WCRE% = 100.00 %
// EP% = 0.00 %
// MRE% = 0.00 %
// MSE = 0.000 
// PDK45_PWR = 0.390 mW
// PDK45_AREA = 690.0 um2
// PDK45_DELAY = 1.40 ns
#include <stdint.h>
#include <stdlib.h>

uint16_t mul8u_T04(uint8_t a, uint8_t b)
{
  return (uint16_t)(a * b);
}
