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
// PDK45_PWR = 0.400 mW
// PDK45_AREA = 700.0 um2
// PDK45_DELAY = 1.40 ns
#include <stdint.h>
#include <stdlib.h>

uint16_t mul8s_T01(uint8_t A, uint8_t B)
{
  return (uint16_t)((int8_t)A * (int8_t)B);
}
