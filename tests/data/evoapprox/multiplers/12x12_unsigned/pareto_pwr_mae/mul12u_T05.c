// MAE = 0 
// PDK45_PWR = 1.0 mW
#include <stdint.h>

uint32_t mul12u_T05(uint16_t A, uint16_t B)
{
  return A * B;
}
